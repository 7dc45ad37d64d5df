"""Hello, roost: a small supervised tree that greets a few names and exits cleanly.

Run it with `roost run examples/hello.py`.
"""

import roost


class Greet(roost.Message):
    name: str


class Greeter(roost.Actor):
    """Answers a greeting and counts how many it has given."""

    def __init__(self) -> None:
        self.greeted = 0

    async def receive(self, message):
        match message:
            case Greet(name=name):
                self.greeted += 1
                return f"hello {name} (greeting #{self.greeted} from {self.ctx.path})"


tree = roost.Supervisor.spec(
    "app",
    strategy="one_for_one",
    children=[
        roost.ChildSpec(factory=Greeter, name="greeter"),
        roost.Pool.spec("greeters", Greeter, size=2),
    ],
)


async def main(system: roost.ActorSystem) -> None:
    app = await system.start(tree)
    greeter = system.lookup("/app/greeter")
    pool = system.lookup("/app/greeters")
    for name in ["ada", "grace", "barbara"]:
        print(await greeter.ask(Greet(name)))
        print(await pool.ask(Greet(name)))
    await app.stop()
