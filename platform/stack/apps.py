from django.apps import AppConfig


class StackConfig(AppConfig):
    name = "stack"
    verbose_name = "Running the platform's processes"
