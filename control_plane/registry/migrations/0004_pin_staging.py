# Model upgrades with no gap: a pin that supersedes another is staged until its hash is
# verified, and remembers the pin it replaced so that one action rolls back to it.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('registry', '0003_modelpin_pools'),
    ]

    operations = [
        migrations.AddField(
            model_name='modelpin',
            name='staged',
            field=models.BooleanField(default=False, editable=False, help_text="Waiting to replace the pin it supersedes: it goes live (and that one retires) when its file's hash is verified."),
        ),
        migrations.AddField(
            model_name='modelpin',
            name='supersedes',
            field=models.ForeignKey(blank=True, editable=False, help_text='The pin this one replaced (or is staged to replace): rollback returns to it.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='registry.modelpin'),
        ),
    ]
