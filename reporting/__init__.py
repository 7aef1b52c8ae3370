"""Usage reporting. Invariant: `UsageDaily` holds, for every (UTC day, user, model
alias), exactly the count and sums of that key's LLM calls; it is updated in the
transaction that records the calls and can be rebuilt from them at any time. Every
summary served (API, admin, `usage_report`) reads it and equals the raw aggregation."""
