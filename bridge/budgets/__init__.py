"""Token budgets: a principal over its budget for the current UTC period gets 429
`budget_exceeded` on calls that would reach the upstream; cache hits stay free."""
