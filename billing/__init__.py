"""Billing: wallets, the append-only credit ledger, holds, model prices, top-ups.

Invariants (checked by `manage.py reconcile_wallets`):
- Wallet.balance == sum of its CreditTransaction.amount == the last row's balance_after.
- Wallet.held == sum of its active CreditHold.amount.
- Only billing/services.py writes Wallet.balance, Wallet.held, ledger rows and holds,
  each inside one transaction holding the wallet row lock.
"""
