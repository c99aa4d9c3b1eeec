"""Hyperparameter searches: a search is a parent of ordinary jobs, driven by Optuna.

- `space`: the search space (spec paths and the values each may take), how a trial's parameters
  become its job spec, and the specs to check before a search is accepted.
- `study`: Optuna's storage (apart from tas's tables), and the samplers and pruners a search names.
- `controller`: `Controller.advance(search_id)`, one idempotent step of a search: tell Optuna what
  its trials' jobs did, prune, start the next trials, finish.
- `loop`: the thread in the API process that advances every unsettled search it holds the lease
  of, about once a second.

Plain Python, the store and Optuna: no web or worker imports. The API process wires it up
(`app.services.searches`), handing it the job service's submit so a trial is admitted and checked
exactly as POST /jobs is."""
