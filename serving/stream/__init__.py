"""The Kafka transport: the consumer, its messages, and the topics it reads and writes."""
