"""The shared store: the database rows and stored files that the API and the workers both read and
write. Nothing here commits: the caller's unit of work (a request, a task, a reaper pass) does."""
