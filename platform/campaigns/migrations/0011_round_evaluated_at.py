from __future__ import annotations

from django.db import migrations, models


def mark_recorded_rounds_evaluated(apps, schema_editor) -> None:
    # Until now a round event carried its evaluation: every round on record was evaluated when it was recorded.
    Round = apps.get_model("campaigns", "Round")
    Round.objects.exclude(event_sha256="").update(evaluated_at=models.F("recorded_at"))


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0010_rename_basemodel_basecheckpoint")]

    operations = [
        migrations.AddField(
            model_name="round",
            name="evaluated_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the held-out evaluation came in (it follows the merged round); empty: being evaluated",
                null=True,
            ),
        ),
        migrations.RunPython(mark_recorded_rounds_evaluated, migrations.RunPython.noop),
    ]
