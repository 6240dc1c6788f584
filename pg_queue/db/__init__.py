"""The database layer: every statement that spells queue SQL (``sql``, ``sql_ops``), the
hot-path calls that run them (``queries``), connections and LISTEN/NOTIFY."""
