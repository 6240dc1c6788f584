"""docker/docker-compose.yml as a tested artifact: its wiring, its roles, and its services run
locally against the real PostgreSQL, PgBouncer and RabbitMQ of this machine."""
