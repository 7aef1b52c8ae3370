from django.contrib.admin.apps import AdminConfig


class ParleyAdminConfig(AdminConfig):
    """django.contrib.admin with Parley's staff console (core.admin_site) as `admin.site`."""

    default_site = "core.admin_site.ParleyAdminSite"
