"""What the three services share: contracts, topics, money, ids, regions, settings, clock."""
