-- GET /v1/events?type=… walks the tenant's events of one type, newest first, without a filter scan.
CREATE INDEX events_tenant_type_created ON events (tenant, type, created DESC, id DESC);
