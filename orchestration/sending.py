"""Sending execute_run messages: the message apply_async sends, for less work per run.

Every async run is one execute_run message, so its send is on the hot path of a
submission. ``execute_run.apply_async`` spends most of its time on work a run's message
does not need: routing options merged per call, the producer's per-message declaration of
the queue (a copy of the queue bound to the channel, then its cache checked), kombu's retry
wrappers -- about four times the CPU of the LPUSH that carries the message (RUNS.md).
execute_run_send builds the same message with Celery's own ``app.amqp.as_task_v2`` (its
protocol, headers and properties) and has the Redis transport put it on the queue in one
LPUSH (orchestration.broker.Channel.task_message_put). A test keeps the two messages equal
field for field, ids aside.

Anything else takes apply_async itself: another broker, a queue routed through an exchange
of its own, receivers of Celery's publish signals, task-sent events, and any error of the
quick path (apply_async then retries with Celery's publish retry policy, and raises
kombu's OperationalError when the broker stays unreachable, as callers expect).
"""

from __future__ import annotations

import logging
import os

from celery import signals
from celery.utils.nodenames import anon_nodename
from kombu.utils.uuid import uuid

# tasks imports the reaper, which sends through this module: a module import, names read
# at call time.
from orchestration import broker, tasks

logger = logging.getLogger(__name__)

# Whether a queue's route is the plain one (a direct exchange and routing key named after
# the queue), by queue name, for execute_run's app: the only routes the quick path takes.
_plain_routes: dict[str, bool] = {}
# Celery's "origin" header: this process's anonymous node name (it names the pid).
_origin: dict[int, str] = {}


def _plain_route(app, queue: str) -> bool:
    plain = _plain_routes.get(queue)
    if plain is None:
        route = app.amqp.router.route({"queue": queue}, tasks.execute_run.name, (), {}, None)
        declared = route.get("queue")
        plain = _plain_routes[queue] = bool(
            declared is not None
            and declared.name == queue
            and declared.routing_key == queue
            and declared.exchange is not None
            and declared.exchange.name == queue
            and declared.exchange.type == "direct"
            and not declared.queue_arguments
            and set(route) == {"queue"}
        )
    return plain


def _quick_path(app) -> bool:
    return not (
        app.conf.task_always_eager
        or app.conf.task_send_sent_event
        or signals.before_task_publish.receivers
        or signals.after_task_publish.receivers
    )


def execute_run_send(
    run_id: str,
    *,
    queue: str,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
) -> None:
    """Send execute_run(run_id) to ``queue``, as ``execute_run.apply_async`` would."""
    execute_run = tasks.execute_run
    app = execute_run.app
    if _quick_path(app) and _plain_route(app, queue):
        try:
            with app.producer_pool.acquire(block=True) as producer:
                channel = producer.channel
                if isinstance(channel, broker.Channel):
                    message = _message(execute_run, run_id, soft_time_limit, time_limit)
                    channel.task_message_put(message, queue=queue)
                    return
        except Exception as exc:  # apply_async below, with its retries and its errors
            logger.info("execute_run %s: quick send failed (%s), apply_async sends", run_id, exc)
    execute_run.apply_async(
        args=[run_id], queue=queue, soft_time_limit=soft_time_limit, time_limit=time_limit
    )


def _message(task, run_id: str, soft_time_limit, time_limit):
    app = task.app
    task_id = uuid()
    root_id = parent_id = None
    parent = app.current_worker_task
    if parent:  # sent by a task (the reaper's): linked to it as apply_async links it
        root_id = parent.request.root_id or parent.request.id
        parent_id = parent.request.id
    pid = os.getpid()
    origin = _origin.get(pid)
    if origin is None:
        origin = _origin[pid] = anon_nodename()
    return app.amqp.as_task_v2(
        task_id,
        task.name,
        args=[run_id],
        kwargs={},
        reply_to=app.thread_oid,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        root_id=root_id,
        parent_id=parent_id,
        origin=origin,
        ignore_result=task.ignore_result,
        argsrepr=repr([run_id]),
        kwargsrepr="{}",
    )
