"""Billing: wallets, the append-only credit ledger, holds, model prices, top-ups.

Invariants (checked by `manage.py reconcile_wallets`):
- Wallet.balance == sum of its CreditTransaction.amount == the last row's balance_after.
- Wallet.held == sum of its active CreditHold.amount.
- Wallet.grants_remaining == sum of its CreditGrant.remaining, and each grant's
  remaining is what its grant row less the debits (in the consumption order) and
  `expiry` rows of the ledger leave of it.
- Only billing/services.py writes Wallet.balance, Wallet.held, ledger rows and holds,
  each inside one transaction holding the wallet row lock.
"""
