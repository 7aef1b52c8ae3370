"""The benchmark's floor task: what handing work to a Celery worker and hearing back
through Redis pub/sub costs with no work at all (see bench.views.RoundTripView)."""

from celery import shared_task

from chat import streaming


@shared_task(name="bench.echo", acks_late=True, ignore_result=True)
def echo(token: str) -> None:
    streaming.publish(token, "done", {})
