"""`manage.py build_tiny_model PATH`: write the tiny random-weight Qwen2.5-VL checkpoint offline."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from inference.tiny_model import build_tiny_model, is_tiny_model_built


class Command(BaseCommand):
    help = "Build a tiny random-weight Qwen2.5-VL checkpoint (real tokenizer and processor) at PATH."

    def add_arguments(self, parser):
        parser.add_argument("path", help="folder to write the checkpoint into")
        parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
        parser.add_argument("--force", action="store_true", help="rebuild even if PATH already holds one")

    def handle(self, *args, path: str, seed: int, force: bool, **options):
        if is_tiny_model_built(path) and not force:
            self.stdout.write(f"{path} already holds a built model; skipping (use --force to rebuild).")
            return
        try:
            built = build_tiny_model(path, seed=seed)
        except FileExistsError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(self.style.SUCCESS(f"Built tiny Qwen2.5-VL model at {built} (seed {seed})."))
