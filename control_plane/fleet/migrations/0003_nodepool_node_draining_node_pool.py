# Node pools. Every node that exists is placed on pool "default" (shared), so what
# each node serves stays as it was: every client and every pin (see clients 0004 and
# registry 0003, which place those on the same pool).

import control_plane.fleet.models
import django.core.validators
import django.db.models.deletion
from django.db import migrations, models


DEFAULT_POOL = "default"


def place_on_default(apps, schema_editor):
    NodePool = apps.get_model("fleet", "NodePool")
    Node = apps.get_model("fleet", "Node")
    if not Node.objects.filter(pool__isnull=True).exists():
        return
    pool, _ = NodePool.objects.get_or_create(
        name=DEFAULT_POOL,
        defaults={"kind": "shared", "description": "Where nodes and clients go unless placed."},
    )
    Node.objects.filter(pool__isnull=True).update(pool=pool)


class Migration(migrations.Migration):

    dependencies = [
        ('fleet', '0002_release_unified_names'),
    ]

    operations = [
        migrations.CreateModel(
            name='NodePool',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(help_text="The pool's name; gateways and node configs know it by this.", max_length=128, unique=True, validators=[django.core.validators.RegexValidator('^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$', "Use 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit.")])),
                ('kind', models.CharField(choices=[('dedicated', 'Dedicated (one client)'), ('shared', 'Shared (several clients)')], default='shared', max_length=16)),
                ('description', models.TextField(blank=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
            ],
            options={
                'verbose_name': 'node pool',
                'ordering': ('name',),
            },
        ),
        migrations.AddField(
            model_name='node',
            name='draining',
            field=models.BooleanField(default=False, help_text='Draining: gateways send it no new sessions; its open sessions go on until they end. Disable it once it holds none.'),
        ),
        migrations.AddField(
            model_name='node',
            name='pool',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='nodes', to='fleet.nodepool'),
        ),
        migrations.RunPython(place_on_default, migrations.RunPython.noop),
        # Not null first with no default (a callable default would be called here, on
        # the live model, against the tables as they are at this migration), then the
        # default, which is Python-side only and touches no row.
        migrations.AlterField(
            model_name='node',
            name='pool',
            field=models.ForeignKey(help_text='It serves the clients and models placed on this pool.', on_delete=django.db.models.deletion.PROTECT, related_name='nodes', to='fleet.nodepool'),
        ),
        migrations.AlterField(
            model_name='node',
            name='pool',
            field=models.ForeignKey(default=control_plane.fleet.models.default_pool_id, help_text='It serves the clients and models placed on this pool.', on_delete=django.db.models.deletion.PROTECT, related_name='nodes', to='fleet.nodepool'),
        ),
    ]
