-- Issue #13 (growth): `GET /v1/payments?method=…` walked a tenant's whole history when few payments
-- match (a parallel sequential scan of 10M payments took 1.6 s). With this index it reads one page.
CREATE INDEX payments_tenant_method ON payments (tenant, method, created DESC, id DESC);
