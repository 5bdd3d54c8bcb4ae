"""Ray Serve application: ``build_app`` (for ``serve run``) and ``deploy`` (from Python)."""

from mlplatform.serving.app import AppArgs, build_app, deploy, wait_until_running

__all__ = ["AppArgs", "build_app", "deploy", "wait_until_running"]
