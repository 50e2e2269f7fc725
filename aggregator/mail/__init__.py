"""Deliverability: DKIM signing, the envelope sender (VERP), the bounce mailbox.

Kept apart from :mod:`aggregator.deliver` (which owns the SMTP conversation and
the ledger) because each part here has one job and its own library: dkimpy
signs, flufl.bounce reads bounce reports, imaplib reads the bounce mailbox.
"""
