from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0009_campaign_evaluation_round_task_metrics"),
    ]

    operations = [
        migrations.RenameModel(old_name="BaseModel", new_name="BaseCheckpoint"),
        migrations.AlterModelOptions(name="basecheckpoint", options={"verbose_name": "base model"}),
    ]
