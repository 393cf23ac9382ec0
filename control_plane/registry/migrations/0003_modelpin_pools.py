# Every pin that exists is placed on pool "default", where fleet 0003 put every node:
# the nodes that loaded it still do.

from django.db import migrations, models


def place_on_default(apps, schema_editor):
    ModelPin = apps.get_model("registry", "ModelPin")
    if not ModelPin.objects.exists():
        return
    NodePool = apps.get_model("fleet", "NodePool")
    pool, _ = NodePool.objects.get_or_create(
        name="default",
        defaults={"kind": "shared", "description": "Where nodes and clients go unless placed."},
    )
    for pin in ModelPin.objects.all():
        pin.pools.add(pool)


class Migration(migrations.Migration):

    dependencies = [
        ('fleet', '0003_nodepool_node_draining_node_pool'),
        ('registry', '0002_model_version_contract'),
    ]

    operations = [
        migrations.AddField(
            model_name='modelpin',
            name='pools',
            field=models.ManyToManyField(blank=True, help_text='The pools whose nodes load it.', related_name='model_pins', to='fleet.nodepool', verbose_name='node pools'),
        ),
        migrations.RunPython(place_on_default, migrations.RunPython.noop),
    ]
