"""kopf handlers: thin glue from watch events to the controller modules."""
