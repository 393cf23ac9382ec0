# Node and gateway releases share one abstract model (control_plane.core.models.Release):
# the drifted names are aligned by renaming the columns, so no row loses data.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('fleet', '0001_initial'),
    ]

    operations = [
        migrations.RenameField(
            model_name='configrelease',
            old_name='bundle',
            new_name='document',
        ),
        migrations.RenameField(
            model_name='configrelease',
            old_name='signed_bundle',
            new_name='signed_document',
        ),
        migrations.RenameField(
            model_name='configrelease',
            old_name='bundle_sha256',
            new_name='document_sha256',
        ),
        migrations.AlterField(
            model_name='configrelease',
            name='signed_document',
            field=models.TextField(help_text='Compact JWS, as pushed to the target.'),
        ),
        migrations.AlterField(
            model_name='configrelease',
            name='document_sha256',
            field=models.CharField(max_length=64, verbose_name='document SHA-256'),
        ),
        migrations.AlterField(
            model_name='configrelease',
            name='status',
            field=models.CharField(choices=[('pending', 'Pending'), ('applied', 'Applied'), ('failed', 'Failed (will retry)'), ('rejected', 'Rejected (not retried)'), ('superseded', 'Superseded')], db_index=True, default='pending', max_length=16),
        ),
    ]
