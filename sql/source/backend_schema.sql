-- The backend's tables as ../shared/specs/inputs.md describes them, with the
-- kinds of columns real backends carry (amounts, currencies, timestamps with
-- time zone, json metadata, arrays). Used by the demo, tests and benchmarks.
-- The seed's SQL questions run unchanged against these names.

CREATE TABLE IF NOT EXISTS public.organizations (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    insolvency_ts timestamptz
);

CREATE TABLE IF NOT EXISTS public.bank_accounts (
    id              bigint PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES public.organizations (id),
    iban            text NOT NULL,
    currency        char(3) NOT NULL DEFAULT 'EUR',
    balance         numeric(19,4) NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.beneficiaries (
    id   bigint PRIMARY KEY,
    name text NOT NULL,
    bic  text,
    iban text
);

CREATE TABLE IF NOT EXISTS public.transfers (
    id             bigint PRIMARY KEY,
    status         int NOT NULL,
    beneficiary_id bigint REFERENCES public.beneficiaries (id),
    amount         numeric(19,4) NOT NULL,
    metadata       jsonb
);

-- Singular, as in the backend: the seed's questions name it so.
CREATE TABLE IF NOT EXISTS public."transaction" (
    id              bigint PRIMARY KEY,
    status          int NOT NULL,
    bank_account_id bigint NOT NULL REFERENCES public.bank_accounts (id),
    subject_type    text NOT NULL,
    subject_id      bigint,
    amount          numeric(19,4) NOT NULL,
    currency        char(3) NOT NULL DEFAULT 'EUR',
    settled_at      timestamptz,
    tags            text[]
);

CREATE TABLE IF NOT EXISTS public.card_transactions (
    id             bigint PRIMARY KEY,
    transaction_id bigint NOT NULL REFERENCES public."transaction" (id),
    status         int NOT NULL,
    amount         numeric(19,4) NOT NULL,
    merchant       text
);
