"""One request from the SuperNode's Runtime API, served as Flower's ``flwr-clientapp`` serves
it, behind the hospital's approvals: what the launcher (``client.launcher``) runs, in the
node's warm worker (``client.worker``) or in its own process.

1. Pull the request, the run and its bundle from the SuperNode's local Runtime API
   (Flower's own calls, as ``flwr-clientapp`` makes them; a request whose arrays the
   SuperNode is still pulling has them retried promptly, ``tasks.object_pulls``).
2. Hash the bundle (SHA-256 over its bytes, computed here, not taken from the message)
   and look the hash up in the hospital's approvals (``client.approvals``): a bundle
   nobody at the hospital approved is refused with an error reply the coordinator logs by
   hospital, and the refusal, with the hash, goes into the audit log.
3. Otherwise answer with the ClientApp installed at the hospital (``client.app``), never
   with code from the bundle, and with the bundle's hash in the node config, so every
   audit record names it; push the reply.

Nothing is ever installed at run time. The code this relies on is Flower's Runtime API
client (``flwr.supernode.runtime.run_clientapp``), which is why flwr is pinned to the
releases it was tested with.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.common.args import add_args_flwr_app_common, try_obtain_flwr_app_token
from flwr.common.constant import ErrorCode, SubStatus
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import SUPERNODE_DEFAULT_CLIENT_ADDRESS
from flwr.supercore.exit import ExitCode, flwr_exit, register_signal_handlers
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.telemetry import EventType
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime import run_clientapp
from flwr.supernode.runtime.run_clientapp import (
    pull_task_input,
    push_message,
    push_task_output,
)

from client.app import app
from client.approvals import BUNDLE_KEY, Approvals, bundle_identity, digest
from client.audit import AuditBroken, AuditLog
from client.launcher import LAUNCHER_NAME
from tasks.errors import UserError
from tasks.object_pulls import prompt_pulls


def answer(message: Message, context: Context, bundle: bytes) -> Message:
    """The reply to one request: refused unless the hospital approved ``bundle``; else the
    installed ClientApp's answer."""
    sha256 = digest(bundle)
    folder = Path(str(context.node_config.get("data-path", ".")))
    name = str(context.node_config.get("hospital-name", folder.name))
    try:
        approval = Approvals(folder).find(sha256)
    except UserError as e:  # an unreadable approvals file refuses, it never lets through
        approval, problem = None, str(e)
    else:
        problem = ""
    if approval is None:
        try:
            label = " ".join(bundle_identity(bundle, "the run's bundle"))
        except UserError:  # not even a bundle
            label = "unnamed bundle"
        reason = (f"hospital {name} has not approved app bundle {sha256} ({label}); "
                  f"a person there approves it with `spinefl hospital approve`"
                  + (f" ({problem})" if problem else ""))
        try:
            AuditLog(folder).append({"type": message.metadata.message_type,
                                     "run": str(message.metadata.run_id),
                                     "bundle_sha256": sha256, "refused": reason})
        except AuditBroken as e:
            reason = f"{reason}; and its audit log is broken: {e}"
        return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, reason), reply_to=message)
    context.node_config[BUNDLE_KEY] = sha256
    return app(message, context)  # the installed ClientApp, whatever the bundle holds


def prompt_request_pulls() -> None:
    """Flower's pull of a request, in this process, retrying the arrays its SuperNode is
    still pulling promptly (``tasks.object_pulls``): the name ``pull_task_input`` calls."""
    run_clientapp.pull_and_inflate_object_from_tree = prompt_pulls(
        inflatable_utils.pull_and_inflate_object_from_tree)


def serve(address: str, token: str, insecure: bool, certificates: bytes | None,
          parent_pid: int | None) -> None:
    """Serve one request the SuperNode's Runtime API holds for ``token``, as Flower's
    ``flwr-clientapp`` would, but with the launcher's ``answer``."""
    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    prompt_request_pulls()
    retry = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=address, insecure=insecure, root_certificates=certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name=LAUNCHER_NAME),
                      RuntimeTokenHttpInterceptor(token)],
        retry_invoker=retry)
    state: dict = {"context": None, "status": SubStatus.FAILED,
                   "details": "the launcher failed before serving the request"}
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))

    def on_exit() -> None:
        retry.max_tries = 1
        push_task_output(client=client, context=state["context"], sub_status=state["status"],
                         details=state["details"])
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()

    register_signal_handlers(event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE,
                             exit_message="Task stopped.", exit_handlers=[on_exit])
    code, reply, message = ExitCode.SUCCESS, None, None
    try:
        heartbeat.start()
        message, state["context"], _, fab = pull_task_input(client)
        reply = answer(message, state["context"], fab.content)
        state["status"], state["details"] = SubStatus.COMPLETED, ""
    except Exception as e:  # the request gets an error reply, as Flower's would
        state["details"] = f"{type(e).__name__}: {e}"
        if message is not None:
            reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, state["details"]),
                            reply_to=message)
        code = ExitCode.TASK_PROC_EXCEPTION
    finally:
        if reply is not None and state["context"] is not None:
            try:
                push_message(client, reply, state["context"])
            except Exception:  # the SuperNode is gone; the exit status says so
                code = ExitCode.CLIENTAPP_COMMUNICATION_ERROR
    flwr_exit(code=code, event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE)


def serve_command_line(argv: list[str]) -> None:
    """Serve the request named by ``flwr-clientapp``'s arguments ``argv``; exits (SystemExit)
    with Flower's status, as ``flwr-clientapp`` does."""
    parser = argparse.ArgumentParser(prog=LAUNCHER_NAME,
                                     description="spinefl's trusted ClientApp launcher")
    parser.add_argument("--runtime-api-address", default=SUPERNODE_DEFAULT_CLIENT_ADDRESS)
    add_args_flwr_app_common(parser)
    args = parser.parse_args(argv)
    serve(args.runtime_api_address, try_obtain_flwr_app_token(args), args.insecure,
          validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
          args.parent_pid)
