from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from releases.models import Release, ReleaseFile
from releases.services import release_yank


class ReleaseFileInline(admin.TabularInline):
    model = ReleaseFile
    extra = 0
    readonly_fields = ("path", "size", "sha256", "download_count")
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Release | None = None) -> bool:
        return False


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ("repo_id", "revision", "campaign", "eval_loss_after", "download_count", "yanked_at", "created_at")
    list_filter = ("yanked_at",)
    # Published releases are immutable: everything is read-only here; yanking goes through the service.
    readonly_fields = [f.name for f in Release._meta.fields]
    inlines = [ReleaseFileInline]
    actions = ["yank"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Release | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Release | None = None) -> bool:
        # The list (for the yank action) needs change permission; a single release's form is view-only.
        return obj is None and super().has_change_permission(request)

    @admin.action(description="Yank (hide; files are kept, never changed)", permissions=["change"])
    def yank(self, request: HttpRequest, queryset: QuerySet[Release]) -> None:
        for release in queryset:
            release_yank(release=release, by=request.user, reason="yanked in the admin")
        messages.success(request, f"Yanked {queryset.count()} release(s).")
