from django.contrib import admin, messages

from community import services
from community.models import Contributor, EnrollmentToken, Node, UnadmittedNode


@admin.register(Contributor)
class ContributorAdmin(admin.ModelAdmin):
    list_display = ("display_name", "user", "status", "terms_version", "terms_accepted_at", "created_at")
    list_filter = ("status",)
    search_fields = ("display_name", "user__username", "user__email")
    readonly_fields = ("terms_version", "terms_accepted_at")
    actions = ["approve", "suspend", "reject"]

    def _set(self, request, queryset, status):
        for contributor in queryset:
            services.contributor_set_status(contributor=contributor, status=status, by=request.user)
        self.message_user(request, f"{queryset.count()} contributor(s) {status}.", messages.SUCCESS)

    def save_model(self, request, obj, form, change):
        """A status edited in the change form goes through the one service (which revokes nodes), never a bare save."""
        if change and "status" in form.changed_data:
            status, reason = obj.status, obj.status_reason
            obj.status = form.initial["status"]
            super().save_model(request, obj, form, change)
            services.contributor_set_status(contributor=obj, status=status, by=request.user, reason=reason)
        else:
            super().save_model(request, obj, form, change)

    def has_delete_permission(self, request, obj=None):
        # Deleting would orphan the contributor's nodes with their keys still admitted: suspend or reject instead.
        return False

    @admin.action(description="Approve selected contributors")
    def approve(self, request, queryset):
        self._set(request, queryset, Contributor.Status.APPROVED)

    @admin.action(description="Suspend selected contributors (revokes their nodes)")
    def suspend(self, request, queryset):
        self._set(request, queryset, Contributor.Status.SUSPENDED)

    @admin.action(description="Reject selected contributors")
    def reject(self, request, queryset):
        self._set(request, queryset, Contributor.Status.REJECTED)


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("name", "pseudonym", "contributor", "status", "flwr_node_id", "last_seen")
    list_filter = ("status",)
    search_fields = ("name", "pseudonym", "flwr_node_id")
    readonly_fields = ("pseudonym", "flwr_node_id", "public_key", "last_seen", "last_report", "created_at", "status")
    actions = ["suspend"]

    def has_delete_permission(self, request, obj=None):
        # A deleted row would leave its key registered on the SuperLink: suspend (which unregisters it) instead.
        return False

    @admin.action(description="Suspend selected nodes (unregisters their key on the SuperLink)")
    def suspend(self, request, queryset):
        for node in queryset:
            services.node_suspend(node=node, by=request.user, reason="suspended by staff")
        self.message_user(request, f"{queryset.count()} node(s) suspended.", messages.SUCCESS)


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin):
    list_display = ("contributor", "created_at", "expires_at", "used_at", "node")
    readonly_fields = ("contributor", "token_hash", "created_at", "expires_at", "used_at", "node")


@admin.register(UnadmittedNode)
class UnadmittedNodeAdmin(admin.ModelAdmin):
    """Keys the SuperLink knew that the platform never admitted (node_keys_sync unregistered them)."""

    list_display = ("flwr_node_id", "name", "superlink_status", "node", "found_at", "resolved_at")
    list_filter = ("resolved_at",)
    readonly_fields = ("flwr_node_id", "public_key", "name", "superlink_status", "node", "found_at")
