"""The durable state-machine executor (`piseduce agent exec`, DESIGN §5.3).

One scheduling pass (`Executor.tick`, every `poll_interval` seconds) does, in one short
transaction: start the deployments of reservations whose slot began, destroy (or cancel) the
reservations whose slot ended, then claim open actions whose lease is free (`agent/lease.py`):
every one it has room for, so a thousand actions ready at once start together, or its fair share
when other executors are alive on the database (their rows in `executors`, renewed every third of
a lease); an action left waiting longer than that goes to any executor with room.
Each claimed action runs in its own asyncio task (`ActionRunner`), at most
`max_concurrent_actions` at once, so nodes advance independently: a slow or hung node only
occupies its own task.

Group commit (`group`): the transitions of the actions running at once are written together, one
transaction per batch (a batch is what queued while the previous one was being written), so a
thousand concurrent actions cost a few transactions a second rather than thousands. An action
resumes only once the batch holding its transition is committed, so what follows holds for each
action exactly as with one transaction per transition. The scheduling pass claims actions with
one UPDATE and loads them in the same transaction; an action claimed for the first time is also
started there (process started with its first step's start, both events), unless another action
of its reservation still runs in this executor.

Durability: every transition (process started or resumed, step started, run() finished, progress
with a message, automatic reboot, step done, failure, completion) is committed together with its
event row before the next begins. The action row says where it stands (`step_index`, `step_ran`:
whether run() of that step completed, `step_rebooted`), so an executor that is killed resumes
exactly there: completed steps are never run again; the interrupted step's run() is repeated
(drivers make it idempotent) unless it had completed, in which case only done() is polled again.
Every commit re-checks in the same transaction that this executor still holds the action's lease
(it also extends it), so an action cancelled or superseded by a destroy stops at its next
transition, and the lease renewal loop stops it within a third of the lease otherwise.

Fewer commits, same guarantees: the process start is committed with its first step's start (in
the claim's transaction when the action is claimed for the first time), a step
done at once (done() True right after run()) gets no separate "run finished" commit unless run()
changed the state or connection (a remote job id is saved before done() is first called), and a
bare progress percentage is committed at most once a second (it rides along with the next commit
otherwise). Step clocks (`step_started_at`) are stamped inside the transaction, and a step's
countdown is paused while the engine waits for the commits the step causes as it runs (progress,
logs, saved state: `Deadline.pause`), so time spent waiting for the database never counts against
a step's timeouts; when an executor resumes an
interrupted step, its clock restarts (an executor outage is not the node's fault) but a step
rebooted once is never rebooted again.

Node release: a destroy that completes ends the reservation (the calendar ignores ended ones) and
erases its credentials. A destroy that fails ends the reservation too (the slot is over) but marks
the node `broken`, with an event saying why: it may still hold the user's data, so no later
reservation is deployed on it (they fail at once with the reason) until an administrator makes it
available again.

Errors: a driver error fails its action only (reservation `failed`, with a readable reason); the
executor never exits because of one. A database error stops the action's task without touching
its row: the lease expires and the action is resumed.

Credentials and secrets: a reservation's Fernet token is decrypted in memory only
(`ctx.credentials`), and so are the deploy form's sealed secrets (`ctx.params`, agent/sealed.py);
both are erased from the database when the reservation ends or is cancelled.

The hot transactions (a group commit, the claim's load and start, the due deployments queued by
the scheduling pass) read and write action and reservation rows with SQL statements, not ORM
instances (`rows`): one SELECT per table for a batch, one UPDATE of many rows per set of changed
columns, one INSERT of many rows for the events. A reservation that reaches a final status is
still written through the ORM, whose listeners erase its secrets and settle its energy.

Their events are written together too (`actions.bulk_events`: COPY on PostgreSQL), logged at
DEBUG with one INFO line per batch, and the `agent exec` process freezes its startup heap for the
garbage collector (`executor.tune_gc`), whose full collections stalled every action otherwise.

Database calls run in a small thread pool (one thread on SQLite, where writers are serialised
anyway, so that in-process writers never wait on SQLite's busy handler) and never block the loop.

The package, along those seams: `runner` (one action, step by step, under its timeouts),
`journal` (a transition's write: lease check, step state, the transition and its event),
`group` (many actions' transitions in one transaction), `rows` (the action and reservation
rows those transactions read and write, without the ORM), `bound` (a
step's timeout, paused while the engine waits for its database), `schedule` (the
scheduling pass: start, destroy, cancel), `executor` (tasks, leases, credentials, shutdown) and
`db` (the thread pool of database calls). Time comes from an injected `agent.clock.Clock`.
"""
