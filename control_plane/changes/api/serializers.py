"""API representation of the change trail (read-only)."""

from rest_framework import serializers

from control_plane.changes.models import ObjectChange


class ObjectChangeSerializer(serializers.ModelSerializer):
    object_type = serializers.SerializerMethodField()

    class Meta:
        model = ObjectChange
        fields = (
            "id",
            "time",
            "user_name",
            "source",
            "action",
            "object_type",
            "changed_object_id",
            "object_repr",
            "prechange_data",
            "postchange_data",
        )
        read_only_fields = fields

    def get_object_type(self, obj: ObjectChange) -> str:
        return f"{obj.changed_object_type.app_label}.{obj.changed_object_type.model}"
