from django.contrib import admin

from .models import RequestLog


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    """Read-only history of API requests."""

    list_display = (
        "received_at", "endpoint", "status_code", "model", "input_tokens", "output_tokens", "total_ms", "error_reason",
    )  # fmt: skip
    list_filter = ("status_code", "endpoint", "model", "received_at")
    search_fields = ("=id", "prompt_preview")
    date_hierarchy = "received_at"
    list_per_page = 50
    # A million rows: the paginator's COUNT is fine, but never show_full_result_count's second one.
    show_full_result_count = False
    fieldsets = (
        (None, {"fields": ("id", "received_at", "finished_at", "endpoint", "method", "status_code", "client_ip",
                           "api_key", "model")}),
        ("Request", {"fields": ("max_new_tokens", "temperature", "top_p", "num_messages", "prompt_preview",
                                "num_images", "num_videos", "media")}),
        ("Usage", {"fields": ("visual_tokens", "input_tokens", "output_tokens", "total_tokens", "finish_reason")}),
        ("Latency", {"fields": ("queue_ms", "preprocess_ms", "ttft_ms", "decode_ms", "total_ms",
                                "output_tokens_per_s", "batch_size")}),
        ("Error", {"fields": ("error_reason", "error_detail")}),
    )  # fmt: skip

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
