"""The ``mlp`` command: one module per command group, each command a thin call into a library
function.

    mlp init <dir>                      a new project that trains and serves as it is
    mlp demo | train | tune | evaluate | generate   --project <dir>
    mlp features build|materialize|validate|show    --project <dir>
    mlp registry ... | audit ... | pipeline run | serve deploy|reload | submit | cost | cluster ...
"""

from __future__ import annotations

import typer

from mlplatform.cli.cluster import cluster_app
from mlplatform.cli.config import config_app, version
from mlplatform.cli.features import features_app
from mlplatform.cli.init import init
from mlplatform.cli.jobs import register_job_commands
from mlplatform.cli.lifecycle import register_lifecycle_commands
from mlplatform.cli.pipeline import pipeline_app
from mlplatform.cli.registry import audit_app, registry_app
from mlplatform.cli.serve import serve_app

app = typer.Typer(help="mlplatform: the ML lifecycle of your project on one Ray cluster.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
app.command()(version)
app.command()(init)
register_lifecycle_commands(app)   # demo, generate, train, tune, evaluate
app.add_typer(config_app, name="config")
app.add_typer(features_app, name="features")
app.add_typer(registry_app, name="registry")
app.add_typer(audit_app, name="audit")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(serve_app, name="serve")
app.add_typer(cluster_app, name="cluster")
register_job_commands(app)         # submit, cost

__all__ = ["app"]
