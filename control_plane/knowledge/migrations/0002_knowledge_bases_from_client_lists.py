"""Each name in a client's old ``knowledge_bases`` list becomes a ``KnowledgeBase`` row.

The documents were loaded onto the nodes with the old ``sanctum kb`` (signed with the
control plane's key) and stay there; the catalog of each starts empty and fills as they
are loaded again through the control plane. No change-trail rows: historical models
have no change logging, and this is the same configuration in a new place.
"""

from django.db import migrations


def lists_to_rows(apps, schema_editor):
    Client = apps.get_model("clients", "Client")
    KnowledgeBase = apps.get_model("knowledge", "KnowledgeBase")
    # values_list reads the column, whatever the model's reverse accessor is named.
    for client_id, names in Client.objects.values_list("pk", "knowledge_bases"):
        for name in dict.fromkeys(names or []):
            KnowledgeBase.objects.get_or_create(client_id=client_id, name=name)


def rows_to_lists(apps, schema_editor):
    Client = apps.get_model("clients", "Client")
    KnowledgeBase = apps.get_model("knowledge", "KnowledgeBase")
    names: dict[int, list[str]] = {}
    for client_id, name in KnowledgeBase.objects.order_by("name").values_list("client_id", "name"):
        names.setdefault(client_id, []).append(name)
    for client_id, listed in names.items():
        Client.objects.filter(pk=client_id).update(knowledge_bases=listed)
    KnowledgeBase.objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0001_initial"),
        ("clients", "0002_client_rates_and_caps"),
    ]

    operations = [migrations.RunPython(lists_to_rows, rows_to_lists)]
