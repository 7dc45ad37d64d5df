"""Property test of supervision: random trees, random crashes, and a model of what must follow.

Each example builds a random tree (a top supervisor with workers and up to two nested
supervisors, random strategies, restart types and poison counts, intensity generous enough
that nothing escalates), crashes random workers one at a time, waits until the tree is
quiescent, and compares every supervisor's `WhichChildren` with a model of OTP semantics.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import roost
from roost import Backoff, ChildSpec, Supervisor, WhichChildren

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
RESTARTS = ("permanent", "transient", "temporary")
NO_BACKOFF = Backoff(initial=0.0, maximum=0.0)


class Crash(roost.Message, frozen=True):
    pass


class Worker(roost.Actor):
    async def receive(self, message: Any) -> Any:
        raise RuntimeError(f"{self.ctx.path} crashed")


# --- the model ------------------------------------------------------------------------------


@dataclass
class WorkerModel:
    name: str
    restart: str
    poison_after: int
    restarts: int = 0

    def fresh(self) -> WorkerModel:
        return WorkerModel(self.name, self.restart, self.poison_after)


@dataclass
class SupervisorModel:
    name: str
    strategy: str
    static: list[Any]  # the spec'd children, copied fresh whenever this supervisor (re)starts
    restart: str = "permanent"
    restarts: int = 0
    children: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.children = [c.fresh() for c in self.static]

    def fresh(self) -> SupervisorModel:
        return SupervisorModel(self.name, self.strategy, self.static, self.restart)

    def spec(self) -> roost.SupervisorSpec:
        children: list[Any] = []
        for c in self.static:
            if isinstance(c, WorkerModel):
                children.append(ChildSpec(factory=Worker, name=c.name, restart=c.restart,  # type: ignore[arg-type]
                                          poison_after=c.poison_after))
            else:
                children.append(ChildSpec(factory=c.spec()))
        return Supervisor.spec(self.name, strategy=self.strategy, max_restarts=100_000,  # type: ignore[arg-type]
                               within=60.0, backoff=NO_BACKOFF, children=children)

    def workers(self, path: str) -> list[tuple[str, SupervisorModel, WorkerModel]]:
        """Every live worker below this supervisor: (path, its supervisor, its model)."""
        found: list[tuple[str, SupervisorModel, WorkerModel]] = []
        for c in self.children:
            if isinstance(c, WorkerModel):
                found.append((f"{path}/{c.name}", self, c))
            else:
                found.extend(c.workers(f"{path}/{c.name}"))
        return found

    def crash(self, worker: WorkerModel) -> int:
        """Apply a Crash told to `worker`; return how many times it fails."""
        if worker.restart == "temporary":
            self.children.remove(worker)
            return 1
        # The message is redelivered after each restart until it is poison.
        for _ in range(worker.poison_after):
            index = self.children.index(worker)
            if self.strategy == "one_for_one":
                group = [worker]
            elif self.strategy == "one_for_all":
                group = list(self.children)
            else:
                group = self.children[index:]
            for member in group:
                if member is not worker and member.restart == "temporary":
                    self.children.remove(member)
                    continue
                member.restarts += 1
                if isinstance(member, SupervisorModel):
                    member.children = [c.fresh() for c in member.static]
        return worker.poison_after


# --- drawing trees --------------------------------------------------------------------------


@st.composite
def trees(draw: st.DrawFn) -> SupervisorModel:
    counter = iter(range(1000))

    def worker() -> WorkerModel:
        return WorkerModel(f"w{next(counter)}", draw(st.sampled_from(RESTARTS)),
                           draw(st.integers(1, 2)))

    top_children: list[Any] = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()) and sum(isinstance(c, SupervisorModel) for c in top_children) < 2:
            nested = [worker() for _ in range(draw(st.integers(1, 3)))]
            top_children.append(SupervisorModel(f"s{next(counter)}",
                                                draw(st.sampled_from(STRATEGIES)), nested))
        else:
            top_children.append(worker())
    return SupervisorModel("top", draw(st.sampled_from(STRATEGIES)), top_children)


# --- running an example ---------------------------------------------------------------------


async def quiescent(system: roost.ActorSystem, dead_letters: int, timeout: float = 5.0) -> None:
    """Wait until every crash has become a dead letter and no actor is busy or suspended."""
    deadline = time.monotonic() + timeout
    calm = 0
    while calm < 5:
        stats = system.statistics()
        settled = (
            len(system.dead_letters) == dead_letters
            and stats["busy"] == 0
            and set(stats["states"]) <= {"running"}
        )
        calm = calm + 1 if settled else 0
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the tree never became quiescent: {stats}, expected {dead_letters} dead letters")
        await asyncio.sleep(0.001)


async def check(system: roost.ActorSystem, model: SupervisorModel, ref: roost.ActorRef) -> None:
    infos = await ref.ask(WhichChildren())
    actual = [(i.name, i.state, i.restarts, i.restart) for i in infos]
    expected = [(c.name, "running", c.restarts, c.restart) for c in model.children]
    assert actual == expected, f"{ref.path}: {actual} != model {expected}"
    for info, child in zip(infos, model.children, strict=True):
        if isinstance(child, SupervisorModel):
            await check(system, child, info.ref)


async def scenario(model: SupervisorModel, picks: list[int]) -> None:
    async with roost.ActorSystem(log_format="json", log_level="critical") as system:
        top = await system.start(model.spec())
        await check(system, model, top)
        sent = 0
        for pick in picks:
            live = model.workers("/top")
            if not live:
                break
            path, owner, worker = live[pick % len(live)]
            ref = system.lookup(path)
            ref.tell(Crash())
            sent += 1
            owner.crash(worker)
            await quiescent(system, sent)
            await check(system, model, top)
            if worker.restart == "temporary":
                assert not ref.is_alive
        assert system.failure is None
    assert system.failure is None


@settings(max_examples=15, deadline=None, database=None)
@given(model=trees(), picks=st.lists(st.integers(0, 1000), min_size=1, max_size=8))
def test_after_random_crashes_the_tree_matches_the_otp_model(
    model: SupervisorModel, picks: list[int]
) -> None:
    asyncio.run(scenario(model, picks))
