# The `keys` scope (issue 29): new keys default to chat and openai. Existing keys keep
# the scopes they have, so none gains `keys`; an owner gives it on the key's admin page
# or makes a key with `manage.py issue_api_key`.

import accounts.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0003_api_key_limits'),
    ]

    operations = [
        migrations.AlterField(
            model_name='apikey',
            name='scopes',
            field=models.JSONField(default=accounts.models.default_scopes, help_text='Any of "chat" (/api/v1), "openai" (/v1) and "keys" (key limits and scopes, the account cap, cards, auto top-up).'),
        ),
    ]
