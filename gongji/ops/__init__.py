"""Operating Gongji: the local infrastructure and its TLS, client quotas, the service processes'
launcher, the AsyncAPI document, and Kafka I/O helpers."""
