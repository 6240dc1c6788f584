"""The queue's row model is called ``Job`` (one word for a queued instance everywhere).

The table keeps its name (``pg_queue_message``, set by ``db_table``); only Django's names
change. ``RenameModel`` renames the content type; the permissions are renamed here too
(``view_queuemessage`` -> ``view_job``, ...), so operators' existing grants keep working
instead of new, ungranted permissions appearing beside stale ones.
"""

from django.db import migrations

ACTIONS = ("add", "change", "delete", "view")


def _rename(apps, schema_editor, old, new, label):
    """Rename the permissions of the content type ``job`` (it is called that at this step in
    both directions: Django renames content types right after RenameModel, and back before)."""
    Permission = apps.get_model("auth", "Permission")
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    content_type = ContentType.objects.using(db).filter(app_label="pg_queue", model="job").first()
    if content_type is None:  # a fresh database: post_migrate creates them with the new names
        return
    for action in ACTIONS:
        Permission.objects.using(db).filter(
            content_type=content_type, codename=f"{action}_{old}"
        ).update(codename=f"{action}_{new}", name=f"Can {action} {label}")


def rename_permissions(apps, schema_editor):
    _rename(apps, schema_editor, "queuemessage", "job", "job")


def restore_permissions(apps, schema_editor):
    _rename(apps, schema_editor, "job", "queuemessage", "queue message")


class Migration(migrations.Migration):

    dependencies = [
        ("pg_queue", "0005_unstorable_reason_and_hot_lease_renewals"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RenameModel(old_name="QueueMessage", new_name="Job"),
        migrations.RunPython(rename_permissions, restore_permissions),
    ]
