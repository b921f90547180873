from django.contrib import admin

from campaigns.models import BaseModel, Campaign, Participation, Round


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ("name", "hf_id", "path", "parameters", "created_at")


class RoundInline(admin.TabularInline):
    model = Round
    extra = 0
    fields = ("number", "eval_loss", "train_loss", "participants", "failures", "bytes_up", "bytes_down", "duration_s")
    readonly_fields = fields
    can_delete = False


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("name", "base_model", "status", "num_rounds", "min_nodes", "launched_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = ("status", "status_reason", "flwr_run_id", "launched_at", "finished_at", "created_by")
    inlines = [RoundInline]


@admin.register(Participation)
class ParticipationAdmin(admin.ModelAdmin):
    list_display = ("round", "node", "samples", "tokens", "train_loss", "val_loss_after", "seconds", "error")
    list_filter = ("round__campaign",)
