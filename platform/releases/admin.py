from django.contrib import admin

from releases.models import Release, ReleaseFile


class ReleaseFileInline(admin.TabularInline):
    model = ReleaseFile
    extra = 0
    readonly_fields = ("path", "size", "sha256")
    can_delete = False


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ("repo_id", "revision", "campaign", "eval_loss_before", "eval_loss_after", "created_at")
    readonly_fields = ("repo_id", "revision", "path", "campaign", "eval_loss_before", "eval_loss_after")
    inlines = [ReleaseFileInline]
