"""The Kafka service (issue 4): a local broker for tests, codecs, the serve loop."""
