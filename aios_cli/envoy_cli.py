"""`aios envoy …`: Envoy config from our routing table, as a file or over ADS."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import yaml

from aios.config import EnvoyOptions, StackConfig

DEFAULTS = EnvoyOptions()


def _options(args: argparse.Namespace) -> EnvoyOptions:
    return EnvoyOptions(listen_host=args.listen_host, listen_port=args.listen_port,
                        admin_port=args.admin_port, ratelimit_service=args.ratelimit_service,
                        xds_address=args.xds, xds_tls_cert=getattr(args, "tls_cert", None),
                        xds_tls_key=getattr(args, "tls_key", None),
                        xds_tls_client_ca=getattr(args, "tls_client_ca", None))


def _write(data: dict[str, Any], out: Path | None) -> None:
    text = yaml.safe_dump(data, sort_keys=False) if out is None or out.suffix in (
        ".yaml", ".yml") else json.dumps(data, indent=1)
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


async def _tables(config: StackConfig) -> Any:
    from gateway.routestore import load_tables, open_route_store

    async with AsyncExitStack() as stack:
        store = await open_route_store(config.gateway, stack)
        return await load_tables(store, config.gateway)


def cmd_export(args: argparse.Namespace, config: StackConfig) -> int:
    """Write Envoy's bootstrap (static from the current routing tables, or pointing at
    ADS with --xds) and the rate-limit service's descriptors."""
    from gateway.envoy import ads_bootstrap, bootstrap, ratelimit_service_config, to_json

    options = _options(args)
    want_limits = args.ratelimit_out is not None and config.gateway.quota.enabled
    # An ADS bootstrap names no routes: the store is read only when something needs it.
    tables = asyncio.run(_tables(config)) if want_limits or not args.xds else {}
    if args.xds:
        _write(to_json(ads_bootstrap(options, args.node_id)), args.out)
    else:
        _write(to_json(bootstrap(config.gateway, tables, options)), args.out)
    if want_limits:
        _write(ratelimit_service_config(config.gateway.quota, sorted(tables),
                                        options.ratelimit_domain), args.ratelimit_out)
    return 0


def cmd_serve(args: argparse.Namespace, config: StackConfig) -> int:
    """Serve Envoy's listeners, routes and clusters over ADS, following routing changes."""
    from aios_cli.runner import run_async
    from gateway.xds import run_xds

    return run_async(run_xds(config.gateway, _options(args), args.metrics))


def add_envoy_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `aios envoy export` and `aios envoy serve` to the CLI."""
    envoy = sub.add_parser("envoy", help="Envoy config from the routing table",
                           description="Envoy config from the routing table")
    esub = envoy.add_subparsers(dest="envoy_command", required=True, metavar="COMMAND")
    listen = argparse.ArgumentParser(add_help=False, parents=[common])
    listen.add_argument("--listen-host", default=DEFAULTS.listen_host,
                        help="Envoy's listener address")
    listen.add_argument("--listen-port", type=int, default=DEFAULTS.listen_port,
                        help="Envoy's REST port")
    listen.add_argument("--admin-port", type=int, default=DEFAULTS.admin_port,
                        help="Envoy's admin port")
    listen.add_argument("--ratelimit-service", default=DEFAULTS.ratelimit_service,
                        help="host:port of the rate-limit service (envoyproxy/ratelimit)")
    export = esub.add_parser("export", parents=[listen], help=cmd_export.__doc__,
                             description=cmd_export.__doc__)
    export.set_defaults(handler=cmd_export)
    export.add_argument("--out", type=Path, help="bootstrap file, .yaml or .json "
                        "(default: YAML on stdout)")
    export.add_argument("--ratelimit-out", type=Path,
                        help="also write the rate-limit service's config here")
    export.add_argument("--xds", help="host:port of `aios envoy serve`: write a bootstrap "
                        "that takes everything from there over ADS")
    export.add_argument("--node-id", default="aios-envoy", help="Envoy node id (with --xds)")
    serve = esub.add_parser("serve", parents=[listen], help=cmd_serve.__doc__,
                            description=cmd_serve.__doc__)
    serve.set_defaults(handler=cmd_serve)
    serve.add_argument("--xds", default="127.0.0.1:18000",
                       help="where to serve ADS (default: 127.0.0.1:18000)")
    serve.add_argument("--tls-cert", type=Path, help="serve ADS over TLS with this "
                       "certificate (PEM); needed for any address but loopback")
    serve.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    serve.add_argument("--tls-client-ca", type=Path, help="accept only Envoys whose client "
                       "certificate this CA (PEM) signed")
    serve.add_argument("--metrics", default="127.0.0.1:18001",
                       help="where to serve Prometheus metrics (default: 127.0.0.1:18001)")
