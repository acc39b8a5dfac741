"""Persistence: SQLAlchemy 2 async over SQLite (default) or PostgreSQL.

Repository functions take a session and return rows; they never commit on their own unless their
name says so, and they never know about HTTP.
"""
