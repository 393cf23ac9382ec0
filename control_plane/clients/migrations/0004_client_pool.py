# Every client that exists is placed on pool "default", with every node (fleet 0003):
# the nodes that served it still do.

import control_plane.fleet.models
import django.db.models.deletion
from django.db import migrations, models


def place_on_default(apps, schema_editor):
    NodePool = apps.get_model("fleet", "NodePool")
    Client = apps.get_model("clients", "Client")
    if not Client.objects.filter(pool__isnull=True).exists():
        return
    pool, _ = NodePool.objects.get_or_create(
        name="default",
        defaults={"kind": "shared", "description": "Where nodes and clients go unless placed."},
    )
    Client.objects.filter(pool__isnull=True).update(pool=pool)


class Migration(migrations.Migration):

    dependencies = [
        ('clients', '0003_remove_client_knowledge_bases'),
        ('fleet', '0003_nodepool_node_draining_node_pool'),
    ]

    operations = [
        migrations.AddField(
            model_name='client',
            name='pool',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='clients', to='fleet.nodepool', verbose_name='node pool'),
        ),
        migrations.RunPython(place_on_default, migrations.RunPython.noop),
        # Not null first with no default (a callable default would be called here, on
        # the live model, against the tables as they are at this migration), then the
        # default, which is Python-side only and touches no row.
        migrations.AlterField(
            model_name='client',
            name='pool',
            field=models.ForeignKey(help_text="The nodes that serve it: only this pool's nodes hold its keys.", on_delete=django.db.models.deletion.PROTECT, related_name='clients', to='fleet.nodepool', verbose_name='node pool'),
        ),
        migrations.AlterField(
            model_name='client',
            name='pool',
            field=models.ForeignKey(default=control_plane.fleet.models.default_pool_id, help_text="The nodes that serve it: only this pool's nodes hold its keys.", on_delete=django.db.models.deletion.PROTECT, related_name='clients', to='fleet.nodepool', verbose_name='node pool'),
        ),
    ]
