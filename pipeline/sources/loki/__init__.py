"""Shipping from Loki, by concept: ``logql`` (query and time parameters), ``errors`` (failures and
the server limits their text states), ``streams`` (decoding answers and tail pushes), ``client``
(the HTTP API and tail websocket) and ``shipper`` (gap-free paging, following, the checkpointed position).
"""
