"""The `aios` command. The only place that reads environment variables."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from aios.config import DEFAULT_CONFIG_PATH, ConfigError, StackConfig, load_config
from aios.tracing import TracingSettings
from aios_cli.audit_cli import add_audit_parser
from aios_cli.envoy_cli import add_envoy_parser
from aios_cli.examples import add_examples
from aios_cli.replay_cli import add_replay_parser
from aios_cli.review_cli import add_review_parser
from aios_cli.rollout_cli import add_rollout_parser
from aios_cli.routes_cli import add_routes_parser
from aios_cli.runner import run_async

logger = logging.getLogger("aios")

ENV_CONFIG = "AIOS_CONFIG"
ENV_LOG_LEVEL = "AIOS_LOG_LEVEL"
ENV_TOKEN = "AIOS_TOKEN"
DEFAULT_WORKDIR = Path("var")

Command = Callable[[argparse.Namespace, StackConfig], int]


def _config(args: argparse.Namespace) -> StackConfig:
    path: Path = args.config
    if path == DEFAULT_CONFIG_PATH and not path.exists():
        return StackConfig()
    return load_config(path)


def cmd_up(args: argparse.Namespace, config: StackConfig) -> int:
    from aios_cli.stack import run_stack

    return run_stack(config, args.config, *([args.log_dir] if args.log_dir else []))


def tracing_settings(environ: Mapping[str, str], service: str) -> TracingSettings:
    """Tracing from the standard OpenTelemetry variables: on when an OTLP endpoint or a
    traces exporter is named, unless the SDK is disabled."""
    exporter = environ.get("OTEL_TRACES_EXPORTER", "")
    named = exporter not in ("", "none") or any(
        environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    disabled = environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
    return TracingSettings(enabled=named and not disabled and exporter != "none",
                           service_name=environ.get("OTEL_SERVICE_NAME", f"aios-{service}"))


def _triton_tracing(environ: Mapping[str, str]) -> list[str]:
    from aios_cli.triton import trace_flags

    if not tracing_settings(environ, "triton").enabled:
        return []
    url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/")
        + "/v1/traces")
    # Triton's exporter takes host:port/path.
    return trace_flags(url.removeprefix("http://"), environ.get("OTEL_SERVICE_NAME", "triton"))


def cmd_gateway(_: argparse.Namespace, config: StackConfig) -> int:
    from gateway.service import run_gateway

    return run_async(run_gateway(config.gateway, tracing_settings(os.environ, "gateway")))


def cmd_sidecar(_: argparse.Namespace, config: StackConfig) -> int:
    from sidecar.service import run_sidecar

    return run_async(run_sidecar(config.sidecar, tracing_settings(os.environ, "sidecar")))


def cmd_triton(args: argparse.Namespace, config: StackConfig) -> int:
    from aios_cli.process import StartupError
    from aios_cli.triton import TritonError, run_triton

    settings = config.triton
    if args.model_repo is not None:
        settings = settings.model_copy(update={"model_repository": args.model_repo})
    if args.url is not None:
        settings = settings.model_copy(update={"external_http": args.url})
    try:
        return run_triton(settings, args.workdir / "triton", _triton_tracing(os.environ))
    except (TritonError, StartupError) as exc:
        logger.error("%s", exc)
        return 1


def cmd_models_build(args: argparse.Namespace, config: StackConfig) -> int:
    try:
        from aios_cli.modelbuild import build
    except ImportError as exc:
        logger.error("building models needs torch: install the 'triton' extra (%s)", exc)
        return 1
    repo = args.model_repo or config.triton.model_repository
    for version, metrics in build(repo).items():
        print(f"claims_risk v{version}: holdout AUC {metrics['holdout_auc']:.4f}, "
              f"log loss {metrics['holdout_logloss']:.4f}")
    return 0


def cmd_token(args: argparse.Namespace, config: StackConfig) -> int:
    from aios_cli.tokens import mint_token

    print(mint_token(config.gateway.auth, args.sub, args.tenant, args.scope, args.ttl))
    return 0


def build_parser(environ: dict[str, str]) -> argparse.ArgumentParser:
    """The argument parser; ``environ`` supplies the defaults that env vars may set."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path,
                        default=Path(environ.get(ENV_CONFIG, str(DEFAULT_CONFIG_PATH))),
                        help=f"stack config file (default: ${ENV_CONFIG} or {DEFAULT_CONFIG_PATH})")
    common.add_argument("--log-level", default=environ.get(ENV_LOG_LEVEL, "INFO"),
                        help=f"logging level (default: ${ENV_LOG_LEVEL} or INFO)")

    parser = argparse.ArgumentParser(prog="aios", description="AIOS inference gateway")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Command, help_text: str,
            parent: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
            ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    up = add("up", cmd_up, "start Triton, sidecar and gateway; Ctrl-C stops all of them")
    up.add_argument("--log-dir", type=Path,
                    help="where each service's log goes (default: var/log)")
    add("gateway", cmd_gateway, "run the gateway (KServe v2 REST + gRPC front door)")
    add("sidecar", cmd_sidecar, "run the sidecar in front of one Triton")
    triton = add("triton", cmd_triton,
                 "run the tritonserver that nvidia-pytriton carries, or wait for an external one")
    triton.add_argument("--model-repo", type=Path, help="model repository (default: config)")
    triton.add_argument("--url", help="host:port of an external Triton to use instead")
    triton.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="where to lay out the backend directory (default: var)")

    models = sub.add_parser("models", help="model repository tools",
                            description="model repository tools")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    build = add("build", cmd_models_build,
                "train claims_risk v1 and v2 and write model.pt, profile.json, golden.json",
                models_sub)
    build.add_argument("--model-repo", type=Path, help="model repository (default: config)")

    add_routes_parser(sub, common)
    add_rollout_parser(sub, common)
    add_envoy_parser(sub, common)

    add_audit_parser(sub, common)
    add_review_parser(sub, common)
    add_replay_parser(sub, common)

    token = add("token", cmd_token, "mint a development JWT signed with the HS256 secret")
    token.add_argument("--sub", default="dev", help="subject (default: dev)")
    token.add_argument("--tenant", default="dev", help="tenant (default: dev)")
    token.add_argument("--scope", default="infer:*",
                       help="space-separated scopes (default: 'infer:*')")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    add_examples(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `aios` command line."""
    args = build_parser(dict(os.environ)).parse_args(argv)
    if (getattr(args, "routes_command", None) or getattr(args, "review_command", None)) \
            and getattr(args, "token", "") is None:
        args.token = os.environ.get(ENV_TOKEN)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = _config(args)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    handler: Command = args.handler
    try:
        return handler(args, config)
    except ConfigError as exc:  # found only when a service starts (e.g. a secret file)
        logger.error("%s", exc)
        return 2
