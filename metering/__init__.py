"""Metering: usage records, price cards, rating, bills, budgets and FOCUS exports."""
