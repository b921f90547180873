from django.contrib import admin

from community.models import Contributor, Node


@admin.register(Contributor)
class ContributorAdmin(admin.ModelAdmin):
    list_display = ("display_name", "user", "created_at")
    search_fields = ("display_name", "user__username")


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("name", "pseudonym", "contributor", "flwr_node_id", "last_seen")
    search_fields = ("name", "pseudonym", "flwr_node_id")
    readonly_fields = ("pseudonym", "flwr_node_id", "last_seen", "created_at")
