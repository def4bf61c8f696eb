"""decode/serial_executor.h: the thread that runs TurboMind's starts in order off the caller's
thread (issue 19). Its contract: posted jobs run one at a time, in order, on one thread that is
not the caller's; closing lets the running job finish and drops every queued one (each told so,
so that its request still ends)."""
from cosyfast import _core


def test_jobs_run_in_order_on_one_thread_not_the_callers():
    t = _core.testing.serial_executor_trace(200, close_while_busy=False)
    assert t["ran"] == list(range(200))
    assert t["dropped"] == []
    assert t["threads"] == 1 and not t["on_caller"]


def test_closing_finishes_the_running_job_and_drops_the_queued_ones_in_order():
    t = _core.testing.serial_executor_trace(50, close_while_busy=True)
    assert t["ran"] == [0]
    assert t["dropped"] == list(range(1, 50))
