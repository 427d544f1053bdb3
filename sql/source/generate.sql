-- Deterministic backend data: 20 organizations, 60 bank accounts,
-- 40 beneficiaries, 400 transfers, 2000 transactions, 3000 card transactions.
-- Re-runnable on an empty schema; ids are stable so tests can refer to them.
SELECT setseed(0.42);

INSERT INTO public.organizations (id, name)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'Organization ' || g
FROM generate_series(1, 20) g;

INSERT INTO public.bank_accounts (id, organization_id, iban, currency, balance, created_at)
SELECT g,
       ('00000000-0000-4000-8000-' || lpad(to_hex(1 + (g % 20)), 12, '0'))::uuid,
       'FR76' || lpad(g::text, 20, '0'),
       (ARRAY['EUR', 'USD', 'GBP'])[1 + g % 3],
       round((random() * 100000)::numeric, 4),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
FROM generate_series(1, 60) g;

INSERT INTO public.beneficiaries (id, name, bic, iban)
SELECT g, 'Beneficiary ' || g,
       (ARRAY['4FBKFRPP', 'BNPAFRPP', '4FXXDEFF', 'CMCIFRPP'])[1 + g % 4],
       'DE89' || lpad(g::text, 18, '0')
FROM generate_series(1, 40) g;

INSERT INTO public.transfers (id, status, beneficiary_id, amount, metadata)
SELECT g, g % 5, 1 + g % 40, round((random() * 5000)::numeric, 4),
       jsonb_build_object('reference', 'REF-' || g, 'instant', g % 2 = 0)
FROM generate_series(1, 400) g;

INSERT INTO public."transaction" (id, status, bank_account_id, subject_type, subject_id, amount, currency, settled_at, tags)
SELECT g, g % 3, 1 + g % 60,
       CASE WHEN g % 2 = 0 THEN 'Transfer' ELSE 'Card' END,
       CASE WHEN g % 2 = 0 THEN 1 + (g / 2) % 400 ELSE NULL END,
       round((random() * 2000 - 1000)::numeric, 4),
       'EUR',
       CASE WHEN g % 7 = 0 THEN NULL ELSE timestamptz '2024-06-01 00:00:00+00' + g * interval '7 minutes' END,
       ARRAY['gen', 'batch-' || (g % 10)]
FROM generate_series(1, 2000) g;

INSERT INTO public.card_transactions (id, transaction_id, status, amount, merchant)
SELECT g, 1 + 2 * ((g * 7) % 1000), g % 3, round((random() * 300)::numeric, 4), 'Merchant ' || (g % 50)
FROM generate_series(1, 3000) g;
