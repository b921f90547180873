"""Node keys stored canonical (SubjectPublicKeyInfo PEM, LF) and unique.

Rows enrolled twice with the same key in another spelling (CRLF) keep their text as it was: the first row of a key
takes the canonical form, so a later enrollment of that key is refused; staff see the older duplicates as before.
"""

from django.db import migrations, models


def canonicalize(apps, schema_editor):
    from cryptography.hazmat.primitives import serialization

    Node = apps.get_model("community", "Node")
    taken = set()
    for node in Node.objects.exclude(public_key="").order_by("pk"):
        try:
            key = serialization.load_pem_public_key(node.public_key.encode())
        except (ValueError, TypeError, UnicodeError):
            continue
        canonical = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        if canonical in taken or canonical == node.public_key:
            taken.add(canonical)
            continue
        if not Node.objects.filter(public_key=canonical).exclude(pk=node.pk).exists():
            node.public_key = canonical
            node.save(update_fields=["public_key"])
        taken.add(canonical)


class Migration(migrations.Migration):
    dependencies = [("community", "0003_unadmitted_node")]

    operations = [
        migrations.RunPython(canonicalize, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="node",
            constraint=models.UniqueConstraint(
                condition=models.Q(("public_key", ""), _negated=True),
                fields=("public_key",),
                name="one_node_per_public_key",
            ),
        ),
    ]
