"""Review: a simulated support agent decides the replies held at the send gate, and their runs
finish.

    roost run examples/support_email/review.py [--store DIR]

Run it after the job (`roost run examples/support_email`), on the same store. It
resumes the runs left unfinished or already decided (by a stopped review, or with
`roost decide`), then takes each gate still pending, oldest first, reads what the
gate shows (the email, the reply, its confidence and the compliance findings) and
approves the reply, edits it or rejects it as `review()` says. Each decision is
stored with its run's status in one write and resumes the run here: an approved or
edited reply is sent (once: the tool's idempotency key is the run's), a rejected one
never. Then it prints what it decided and what became of the runs.

Stop it and run it again (Ctrl-C, `kill -9`): the runs it had decided resume, it
decides only the gates still pending, and no reply is sent twice.
"""

from __future__ import annotations

import time

import anyio
import msgspec
import roost

import app
import model
import summary
from pipeline import SUPPORT_EMAIL
from progress import Progress
from records import ForReview, Reply

#: Who the simulated reviewer decides as, in the gates' audit trail.
REVIEWER = "simulated-reviewer"
#: What the reviewer adds to a vague reply before it goes out.
QUESTION = ("Could you tell us a little more, such as which product this is about and what "
            "happened, so that we can help you properly?")
_SIGN_OFF = "Best regards,"


class Verdict(msgspec.Struct, frozen=True):
    """A decision on a held reply: "approve", "edit" (with the reply to send) or "reject"."""

    decision: str
    why: str
    reply: Reply | None = None


def review(held: ForReview) -> Verdict:
    """The simulated reviewer's decision on a held reply (always the same for the same one).

    - A customer who mentions legal action gets an answer from a person, not this draft.
    - A draft with confidence below 0.3 says next to nothing: a person writes it instead.
    - A draft below 0.6 is vague: it goes out asking the customer for the details it lacks.
    - Anything else is approved (the compliance step has fixed what it found).
    """
    if "legal action mentioned" in held.violations:
        return Verdict("reject", "legal action mentioned: a lead answers this one by hand")
    if held.confidence < 0.3:
        return Verdict("reject", "the draft does not answer the email: written by hand instead")
    if held.confidence < 0.6:
        head, sign_off, tail = held.reply.body.rpartition(_SIGN_OFF)
        body = f"{head}{QUESTION}\n\n{sign_off}{tail}" if sign_off else f"{tail}\n\n{QUESTION}"
        return Verdict("edit", "vague: asked the customer for details",
                       msgspec.structs.replace(held.reply, body=body))
    return Verdict("approve", "reads well")


async def main(system: roost.ActorSystem) -> None:
    """Decide every reply held at the send gate, wait for the runs to finish, print a summary."""
    store = app.prepare(system)
    started = time.monotonic()
    session = summary.ReviewSession(reviewer=REVIEWER)
    with app.logs_to(store / "support_email.log"):
        # Runs decided before a stop, and runs the job left unfinished, go on first; those
        # that reach the gate now are reviewed below with the others.
        resumed = await system.pipelines.register(SUPPORT_EMAIL, resume=True)
        session.resumed = len(resumed)
        for handle in resumed:
            await system.pipelines.outcome(handle.run_id)
        held = await system.gates.pending(pipeline=SUPPORT_EMAIL.name)
        print(f"{len(held)} replies held for review", flush=True)
        progress = Progress(len(held))

        async def follow(run_id: str) -> None:
            progress.record((await system.pipelines.outcome(run_id)).status)

        async with anyio.create_task_group() as group:
            for gate in held:
                verdict = review(msgspec.json.decode(gate.shown, type=ForReview))
                await anyio.sleep(model.latency(f"{gate.run_id}:review", 20, 60))  # reading
                try:
                    await system.gates.decide(gate.run_id, gate.gate, verdict.decision,
                                              input=verdict.reply, by=REVIEWER,
                                              comment=verdict.why)
                except roost.GateAlreadyDecided:
                    pass  # its timeout (or someone at the console) was first: that decision stands
                except roost.GateClosed:
                    progress.record("cancelled")  # the run was cancelled while it waited
                    continue
                else:
                    _count(session, verdict.decision)
                group.start_soon(follow, gate.run_id)
        progress.close()
        session.seconds = time.monotonic() - started
        print(await summary.render_review(system, SUPPORT_EMAIL, session), flush=True)


def _count(session: summary.ReviewSession, decision: str) -> None:
    if decision == "approve":
        session.approved += 1
    elif decision == "edit":
        session.edited += 1
    else:
        session.rejected += 1
